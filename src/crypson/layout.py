"""Where every stage input and output lives under one root: the file contract between the stages,
`dvc.yaml` and the Kubeflow components (nothing heavy imported here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_KINDS = ("cgan", "vae", "classifier")  # the three trained models, in the order they are trained
# Each model's network file (crypson.model_files: weights + hyper-parameters) and the network kind it holds.
MODEL_FILES = {"cgan": "generator.pt", "vae": "vae.pt", "classifier": "classifier.pt"}
NETWORK_KINDS = {"cgan": "generator", "vae": "vae", "classifier": "classifier"}
DISCRIMINATOR_FILE = "discriminator.pt"  # beside the generator: its class head filters the classifier's data
REGISTRATION_FILE = "registration.json"


@dataclass(frozen=True)
class Layout:
    """Paths of every stage output under one root (the repo for `dvc repro`, a work dir elsewhere).

    Training checkpoints live under `root/checkpoints` unless `checkpoints` names another folder: on
    Kubeflow the task's work dir dies with its pod, so a training task's checkpoints go to the PVC
    `crypson-checkpoints` (CRYPSON_CHECKPOINTS, crypson.kfp.runtime.task_checkpoints), or to the run's
    workspace for a TrainJob, where a retry finds them.
    """

    root: Path = Path(".")
    checkpoints: Path | None = None

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def validation_report(self) -> Path:
        return self.root / "reports" / "validation.json"

    @property
    def data_docs(self) -> Path:
        """Great Expectations' Data Docs of the validate stage (an HTML site: index.html)."""
        return self.root / "reports" / "data_docs"

    @property
    def promotion_report(self) -> Path:
        return self.root / "reports" / "promotion.json"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def model_file(self, kind: str) -> Path:
        """The network file of model `kind` (MODEL_KINDS)."""
        return self.model_dir(kind) / MODEL_FILES[kind]

    def registration(self, kind: str) -> Path:
        """The registry record a training stage writes beside its model (name, version, run, model id)."""
        return self.model_dir(kind) / REGISTRATION_FILE

    def registrations(self) -> dict[str, dict[str, Any]]:
        """kind -> registration record of the three trained models."""
        return {kind: json.loads(self.registration(kind).read_text()) for kind in MODEL_KINDS}

    def checkpoint(self, name: str) -> Path:
        return (self.checkpoints or self.root / "checkpoints") / f"{name}.pt"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def plot(self, name: str) -> Path:
        return self.root / "plots" / name
