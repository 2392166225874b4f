"""One function per pipeline stage: the only implementation, called by the stage runner
(crypson.stages.runner: the CLI, and so `dvc repro`, and the Kubeflow components).

The stage functions load on first use (PEP 562), so a stage's process imports only its own module's
dependencies: `crypson stage ingest` needs neither MLflow nor the figures.
"""

from __future__ import annotations

import importlib
from typing import Any

from crypson.stages.layout import Layout

# name -> the module that defines it
_HOMES = {"ingest": "data", "prepare": "data", "validate": "data", "DataValidationError": "data",
          "train_cgan": "training", "train_vae": "training", "train_classifier": "training",
          "evaluate": "evaluation", "promote": "evaluation", "attack": "attack"}

__all__ = ["Layout", *_HOMES]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"crypson.stages.{_HOMES[name]}"), name)
