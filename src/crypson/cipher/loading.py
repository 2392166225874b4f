"""Load the three networks for the cipher: from the MLflow registry by alias, or from the
pipeline's local outputs (models/ after `dvc repro`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from crypson import model_files
from crypson.cipher.codec import CipherModels
from crypson.layout import MODEL_KINDS, NETWORK_KINDS, Layout

log = logging.getLogger(__name__)


def from_registry(alias: str = "champion", device: torch.device | str = "cpu") -> CipherModels:
    """The versions that `alias` points at, loaded by number (so a moving alias cannot mix sets).

    Raises:
        LookupError: an alias that is missing on a model, or a classifier trained on another VAE.
        tracking.WeightsIntegrityError: a weights file that is not the one its version recorded.
    """
    import mlflow
    from mlflow import MlflowClient

    from crypson.tracking import MODEL_NAMES, load_registered_network

    client = MlflowClient()
    modules, versions, tags = {}, {}, {}
    for kind in ("cgan", "vae", "classifier"):
        name = MODEL_NAMES[kind]
        try:
            version = client.get_model_version_by_alias(name, alias)
        except mlflow.exceptions.MlflowException:
            raise LookupError(f"registered model {name!r} has no alias {alias!r}: run the pipeline "
                              f"(dvc repro) or pick another alias (candidate, champion)") from None
        versions[name], tags[kind] = str(version.version), version.tags
        # Weights only, rebuilt from this package's code, the file's SHA-256 checked against the version's.
        modules[kind], _ = load_registered_network(name, str(version.version), NETWORK_KINDS[kind], device)
    for kind in ("vae", "cgan"):  # the classifier was trained on one VAE and one cGAN
        trained_on = tags["classifier"].get(f"{kind}_version")
        if trained_on is not None and trained_on != versions[MODEL_NAMES[kind]]:
            raise LookupError(f"{MODEL_NAMES['classifier']} v{versions[MODEL_NAMES['classifier']]} was trained with "
                              f"{MODEL_NAMES[kind]} v{trained_on}, but {alias!r} points at "
                              f"v{versions[MODEL_NAMES[kind]]}: promote a consistent set")
    classes = tuple(json.loads(tags["classifier"]["classes"]))
    return CipherModels(modules["cgan"], modules["vae"], modules["classifier"], classes, versions)


def from_directory(root: Path, device: torch.device | str = "cpu") -> CipherModels:
    """The models a pipeline run wrote under `root`/models, with their registered versions: the one loader
    of the trained set (the cipher, the evaluate and attack stages)."""
    layout = Layout(Path(root))
    (generator, classes), (vae, _), (classifier, classifier_classes) = (
        model_files.load_network(layout, kind, device) for kind in MODEL_KINDS)
    if classes != classifier_classes:
        raise ValueError(f"the cGAN and the classifier in {layout.root / 'models'} were trained on different classes")
    versions = {}
    for kind in MODEL_KINDS:
        if layout.registration(kind).is_file():
            registration = json.loads(layout.registration(kind).read_text())
            versions[registration["name"]] = str(registration["version"])
    if len(versions) != 3:
        # Without the versions, decrypt cannot check that the ciphertext was made with these models.
        log.warning("%s lacks a registration.json of %d of the 3 models: ciphertexts carry no model versions "
                    "and decrypt does not check them", layout.root / "models", 3 - len(versions))
        versions = {}
    return CipherModels(generator, vae, classifier, classes, versions)
