"""`crypson-cipher`: an MLflow pyfunc model that serves encrypt and decrypt over HTTP.

It bundles the three registered networks' weights files (copied into the model's artifacts when it
is registered, each checked against its version's SHA-256 then and again when the server loads it,
and loaded weights-only: nothing is unpickled; the model's code is `served_model.py`, MLflow's
"models from code") and nothing secret: the key is read from the serving process's environment
(CRYPSON_KEY) when the model loads, and never travels in a request, a response or an artifact.

    crypson serve-register --models champion [--operations encrypt]
    CRYPSON_KEY=... CRYPSON_SERVE_TOKEN=... mlflow models serve -m models:/crypson-cipher@champion --env-manager local

Request: {"dataframe_records": [rows], "params": {"token": "<CRYPSON_SERVE_TOKEN>"}}; without the token
the server answers 401, and 403 for an operation the deployment does not allow (both: nothing done).
Rows: {"operation": "encrypt", "text": "..."} or {"operation": "decrypt", "ciphertext": "<JSON
envelope>"}; each response row holds "ciphertext" or "text", or "error" for a row that failed. An
encrypt row with a character that none of its `cipher.candidates` images reads back is such an error
(the count of those characters, never the text): the server never sends a misread, unless the bundle
was registered with `--allow-misread`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from crypson.cipher.alphabet import AlphabetError
from crypson.cipher.envelope import CiphertextError, from_json, to_json
from crypson.cipher.keys import key_from_env
from crypson.tracking import MODEL_NAMES, alias_versions, pip_requirements, register_version, registered_weights

SERVED_NAME = "crypson-cipher"
SERVED_CODE = Path(__file__).with_name("served_model.py")  # MLflow "models from code": nothing is pickled
# A served encrypt row's longest text: about one envelope's size bound (envelope.MAX_CIPHERTEXT_BYTES).
MAX_TEXT_CHARACTERS = 20_000
log = logging.getLogger(__name__)
OPERATIONS = ("decrypt", "encrypt")
TOKEN_ENV_VAR = "CRYPSON_SERVE_TOKEN"
MIN_TOKEN_CHARACTERS = 16


def check_operations(operations: tuple[str, ...] | list[str]) -> set[str]:
    """The allowed operations, at least one of encrypt and decrypt."""
    chosen = set(operations)
    if not chosen or chosen - set(OPERATIONS):
        raise ValueError(f"operations must be one or both of {', '.join(OPERATIONS)}, got {', '.join(operations)}")
    return chosen



class Refused(MlflowException):
    """A refusal whose message stays as written. MLflow's scoring server rewrites the message of an
    MlflowException raised in predict to "Failed to predict data '<the whole request>'", which would
    echo a refused request's plaintext or ciphertext into the 4xx answer (and any proxy log)."""

    @property
    def message(self) -> str:
        return self.__dict__["fixed_message"]

    @message.setter
    def message(self, value: str) -> None:
        self.__dict__.setdefault("fixed_message", value)

class CipherService(mlflow.pyfunc.PythonModel):
    """Encrypt/decrypt rows in batches with the bundled networks and the server's key."""

    def load_context(self, context: Any) -> None:
        from crypson.model_files import refuse_pickle_loads
        from crypson.cipher.codec import CipherModels
        from crypson.layout import NETWORK_KINDS
        from crypson.cipher.masks import get_scheme
        from crypson.files import file_sha256
        from crypson.tracking import WeightsIntegrityError, load_weights_only

        refuse_pickle_loads()  # the server holds the key

        manifest = json.loads(Path(context.artifacts["manifest"]).read_text())
        if "weights_sha256" not in manifest:
            raise ValueError("this crypson-cipher bundle predates weights-only serving (its manifest has no "
                             "'weights_sha256'): register it again with `crypson serve-register`")
        modules = {}
        for kind, network in NETWORK_KINDS.items():
            path = Path(context.artifacts[kind])
            if file_sha256(path) != manifest["weights_sha256"][kind]:
                raise WeightsIntegrityError(f"crypson-cipher: the bundled {kind} weights are not the ones "
                                            "registered (SHA-256 mismatch); refusing to load them")
            modules[kind], _ = load_weights_only(path, network, f"crypson-cipher {kind}")
        self.models = CipherModels(modules["cgan"], modules["vae"], modules["classifier"],
                                   tuple(manifest["classes"]), manifest["versions"])
        self.scheme = get_scheme(manifest["scheme"], self.models.vae.latent_dim, **manifest["scheme_settings"])
        if "candidates" not in manifest:
            raise ValueError("this crypson-cipher bundle predates the constant-work sender's check (its manifest "
                             "has no 'candidates'): register it again with `crypson serve-register`")
        self.candidates = int(manifest["candidates"])
        self.allow_misread = bool(manifest.get("allow_misread", False))
        self.operations = frozenset(manifest.get("operations", OPERATIONS))
        self.key = key_from_env(os.environ)  # fails the server's start, loudly, when unset
        self.token_digest = token_digest_from_env(os.environ)  # likewise: no unauthenticated server

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        self._authorise((params or {}).get("token"), model_input)
        rows = [{k: v for k, v in row.items() if isinstance(v, str)}
                for row in model_input.to_dict(orient="records")]  # absent optional columns come as NaN
        results: list[dict] = [{} for _ in rows]
        by_operation: dict[str, list[int]] = {"encrypt": [], "decrypt": []}
        for index, row in enumerate(rows):
            operation = row.get("operation")
            if operation in by_operation:
                by_operation[operation].append(index)
            else:
                results[index] = {"error": f"operation must be 'encrypt' or 'decrypt', got {operation!r}"}
        for operation, indices in by_operation.items():
            for index, result in zip(indices, self._run(operation, [rows[i] for i in indices])):
                results[index] = result
        return results

    def _authorise(self, token: object, model_input: pd.DataFrame) -> None:
        """401 without the server's token (compared in constant time); 403 for an operation this deployment
        does not allow. A refused request does nothing."""
        from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

        given = hashlib.sha256(token.encode()).digest() if isinstance(token, str) else b""
        if not hmac.compare_digest(given, self.token_digest):
            raise Refused("authentication required: send the server's token as params.token "
                          f"(the server reads it from {TOKEN_ENV_VAR})", error_code=UNAUTHENTICATED)
        asked = set(model_input["operation"]) if "operation" in model_input else set()
        refused = sorted(str(op) for op in asked & set(OPERATIONS) - self.operations)
        if refused:
            raise Refused(f"this server does not allow {', '.join(refused)}; it allows "
                          f"{', '.join(sorted(self.operations))}", error_code=PERMISSION_DENIED)

    def _run(self, operation: str, rows: list[dict]) -> list[dict]:
        """All rows of one operation in one batched call; if that fails, row by row for the errors."""
        from crypson.cipher.codec import decrypt, encrypt

        field = "text" if operation == "encrypt" else "ciphertext"

        def call(batch: list[dict]) -> list[dict]:
            values = [row.get(field) for row in batch]
            if not all(isinstance(value, str) for value in values):
                raise ValueError(f"each {operation} row needs a string {field!r}")
            longest = max(len(value) for value in values)
            if operation == "encrypt" and longest > MAX_TEXT_CHARACTERS:
                raise ValueError(f"text of {longest} characters is over the limit of {MAX_TEXT_CHARACTERS} a row")
            if operation == "encrypt":
                return [{"ciphertext": to_json(e)} for e in encrypt(self.models, values, self.key, self.scheme,
                                                                        candidates=self.candidates,
                                                                        allow_misread=self.allow_misread,
                                                                        one_stream=False)]
            envelopes = [from_json(value) for value in values]
            return [{"text": d.text} for d in decrypt(self.models, envelopes, self.key, one_stream=False)]

        if not rows:
            return []
        try:
            return call(rows)
        except Exception:  # noqa: BLE001 - one bad row must not fail the batch: retry row by row
            results = []
            for row in rows:
                try:
                    results.extend(call([row]))
                except (AlphabetError, CiphertextError, ValueError) as error:
                    results.append({"error": str(error)})
                except Exception:  # noqa: BLE001 - logged here; the client gets no trace or path
                    log.exception("crypson-cipher: %s row failed", operation)
                    results.append({"error": f"internal error while processing this {operation} row"})
            return results


def token_digest_from_env(environ: Mapping[str, str]) -> bytes:
    """SHA-256 of the server's request token ($CRYPSON_SERVE_TOKEN, at least 16 characters)."""
    token = environ.get(TOKEN_ENV_VAR, "")
    if len(token) < MIN_TOKEN_CHARACTERS:
        raise ValueError(f"{TOKEN_ENV_VAR} must hold the token clients send (at least {MIN_TOKEN_CHARACTERS} "
                         f"characters, e.g. `openssl rand -hex 32`), got {len(token)} characters")
    return hashlib.sha256(token.encode()).digest()


def signature():
    """The served model's schema: rows of operation + text or ciphertext; the token as a param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(DataType.string, "operation"), ColSpec(DataType.string, "text", required=False),
                     ColSpec(DataType.string, "ciphertext", required=False)])
    return ModelSignature(inputs=inputs, params=ParamSchema([ParamSpec("token", DataType.string, "")]))


def register_service(alias: str, scheme: str, scheme_settings: dict[str, float], candidates: int,
                     allow_misread: bool = False, operations: tuple[str, ...] = OPERATIONS,
                     experiment_id: str | None = None) -> str:
    """Log `crypson-cipher` bundling the versions `alias` points at; register it with the same alias.

    candidates: images per character for the sender's check (`codec.encrypt`), recorded in the
        bundle's manifest.
    allow_misread: the served encrypt sends a character no candidate reads back instead of an error row.
    operations: what the deployment answers (encrypt, decrypt or both); others get a 403.
    experiment_id: the MLflow experiment of the registering run (None: the active or default one).

    Returns:
        The new `crypson-cipher` version.
    """
    client = MlflowClient()
    found = alias_versions(list(MODEL_NAMES.values()), alias)
    missing = [name for name, version in found.items() if version is None]
    if missing:
        raise LookupError(f"{', '.join(missing)} has no alias {alias!r}: run the pipeline first")
    versions = {name: str(version) for name, version in found.items()}
    classifier = client.get_model_version(MODEL_NAMES["classifier"], versions[MODEL_NAMES["classifier"]])
    # Each weights file checked against its version's SHA-256 now, and again by the server at load.
    weights = {kind: registered_weights(name, versions[name]) for kind, name in MODEL_NAMES.items()}
    manifest = {"classes": json.loads(classifier.tags["classes"]), "versions": versions, "scheme": scheme,
                "scheme_settings": scheme_settings, "candidates": candidates, "allow_misread": allow_misread,
                "weights_sha256": {kind: sha256 for kind, (_, sha256) in weights.items()},
                "operations": sorted(check_operations(operations))}
    with tempfile.TemporaryDirectory() as folder:
        manifest_path = Path(folder) / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2))
        artifacts = {kind: str(path) for kind, (path, _) in weights.items()}
        with mlflow.start_run(experiment_id=experiment_id, run_name="register_cipher_service",
                              tags={"crypson.stage": "serve"}):
            mlflow.log_params({f"bundled.{name}": version for name, version in versions.items()}
                              | {"scheme": scheme, "candidates": candidates, "allow_misread": allow_misread,
                                 "operations": ",".join(sorted(operations))})
            info = mlflow.pyfunc.log_model(
                name="cipher", python_model=str(SERVED_CODE), signature=signature(),
                artifacts={**artifacts, "manifest": str(manifest_path)},
                pip_requirements=pip_requirements(),
            )
    tags = {"bundled_alias": alias, **{f"bundled.{name}": v for name, v in versions.items()}}
    return register_version(info.model_uri, SERVED_NAME, tags,
                            "Crypson cipher service: encrypt/decrypt rows; key from the server's CRYPSON_KEY.", alias)
