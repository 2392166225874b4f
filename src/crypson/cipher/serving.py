"""`crypson-cipher`: an MLflow pyfunc model that serves encrypt and decrypt over HTTP.

It bundles the three registered networks (copied into the model's artifacts when it is
registered) and nothing secret: the key is read from the serving process's environment
(CRYPSON_KEY) when the model loads, and never travels in a request, a response or an artifact.

    crypson serve-register --models champion
    CRYPSON_KEY=... mlflow models serve -m models:/crypson-cipher@champion --env-manager local

Request rows: {"operation": "encrypt", "text": "..."} or {"operation": "decrypt", "ciphertext": "<JSON
envelope>"}; each response row holds "ciphertext" or "text", or "error" for a row that failed. An
encrypt row with a character that none of its `cipher.candidates` images reads back is such an error
(the count of those characters, never the text): the server never sends a misread, unless the bundle
was registered with `--allow-misread`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from crypson.cipher.alphabet import AlphabetError
from crypson.cipher.envelope import CiphertextError, from_json, to_json
from crypson.cipher.keys import key_from_env
from crypson.tracking import MODEL_NAMES, alias_versions, pip_requirements, register_version

SERVED_NAME = "crypson-cipher"
# A served encrypt row's longest text: about one envelope's size bound (envelope.MAX_CIPHERTEXT_BYTES).
MAX_TEXT_CHARACTERS = 20_000
log = logging.getLogger(__name__)


class CipherService(mlflow.pyfunc.PythonModel):
    """Encrypt/decrypt rows in batches with the bundled networks and the server's key."""

    def load_context(self, context: Any) -> None:
        from crypson.cipher.codec import CipherModels
        from crypson.cipher.masks import get_scheme

        manifest = json.loads(Path(context.artifacts["manifest"]).read_text())
        modules = {kind: mlflow.pytorch.load_model(context.artifacts[kind], map_location="cpu")
                   for kind in ("cgan", "vae", "classifier")}
        self.models = CipherModels(modules["cgan"], modules["vae"], modules["classifier"],
                                   tuple(manifest["classes"]), manifest["versions"])
        self.scheme = get_scheme(manifest["scheme"], self.models.vae.latent_dim, **manifest["scheme_settings"])
        if "candidates" not in manifest:
            raise ValueError("this crypson-cipher bundle predates the constant-work sender's check (its manifest "
                             "has no 'candidates'): register it again with `crypson serve-register`")
        self.candidates = int(manifest["candidates"])
        self.allow_misread = bool(manifest.get("allow_misread", False))
        self.key = key_from_env(os.environ)  # fails the server's start, loudly, when unset

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        rows = model_input.to_dict(orient="records")
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


def register_service(alias: str, scheme: str, scheme_settings: dict[str, float], candidates: int,
                     allow_misread: bool = False) -> str:
    """Log `crypson-cipher` bundling the versions `alias` points at; register it with the same alias.

    candidates: images per character for the sender's check (`codec.encrypt`), recorded in the
        bundle's manifest.
    allow_misread: the served encrypt sends a character no candidate reads back instead of an error row.

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
    manifest = {"classes": json.loads(classifier.tags["classes"]), "versions": versions, "scheme": scheme,
                "scheme_settings": scheme_settings, "candidates": candidates, "allow_misread": allow_misread}
    with tempfile.TemporaryDirectory() as folder:
        manifest_path = Path(folder) / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2))
        artifacts = {kind: f"models:/{name}/{versions[name]}" for kind, name in MODEL_NAMES.items()}
        with mlflow.start_run(run_name="register_cipher_service", tags={"crypson.stage": "serve"}):
            mlflow.log_params({f"bundled.{name}": version for name, version in versions.items()}
                              | {"scheme": scheme, "candidates": candidates, "allow_misread": allow_misread})
            info = mlflow.pyfunc.log_model(
                name="cipher", python_model=CipherService(),
                artifacts={**artifacts, "manifest": str(manifest_path)},
                pip_requirements=pip_requirements(),
            )
    tags = {"bundled_alias": alias, **{f"bundled.{name}": v for name, v in versions.items()}}
    return register_version(info.model_uri, SERVED_NAME, tags,
                            "Crypson cipher service: encrypt/decrypt rows; key from the server's CRYPSON_KEY.", alias)
