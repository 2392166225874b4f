"""One function per pipeline stage: the only implementation, called by the CLI (and so by
`dvc repro`) and by the Kubeflow components."""

from crypson.stages.common import Layout
from crypson.stages.data import DataValidationError, ingest, prepare, validate
from crypson.stages.evaluation import evaluate, promote
from crypson.stages.security import attack
from crypson.stages.training import train_cgan, train_classifier, train_vae

__all__ = ["DataValidationError", "attack", "Layout", "evaluate", "ingest", "prepare", "promote", "train_cgan",
           "train_classifier", "train_vae", "validate"]
