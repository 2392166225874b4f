"""One function per pipeline stage: the only implementation, called by the stage runner
(crypson.stages.runner: the CLI, and so `dvc repro`, and the Kubeflow components).

Each stage's module loads on first use, so a stage's process imports only what that stage needs:
`crypson stage ingest` needs neither MLflow nor the figures. `stage_function(name)` is the way in;
the names below also resolve lazily (PEP 562), except `attack`, whose module has the same name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from crypson.layout import Layout

# Stage name -> its module under crypson.stages, in pipeline order (dvc.yaml's, tested).
STAGE_MODULES = {"ingest": "data", "prepare": "data", "validate": "data", "train_cgan": "training",
                 "train_vae": "training", "train_classifier": "training", "evaluate": "evaluation",
                 "attack": "attack", "promote": "promotion"}
_LAZY = {**{name: home for name, home in STAGE_MODULES.items() if name != home}, "DataValidationError": "data"}

__all__ = ["Layout", "STAGE_MODULES", "stage_function", *_LAZY]


def stage_function(name: str) -> Callable[..., Any]:
    """The function that implements stage `name`, its module imported now."""
    if name not in STAGE_MODULES:
        raise ValueError(f"unknown stage {name!r}; allowed: {', '.join(STAGE_MODULES)}")
    return getattr(importlib.import_module(f"crypson.stages.{STAGE_MODULES[name]}"), name)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"crypson.stages.{_LAZY[name]}"), name)
