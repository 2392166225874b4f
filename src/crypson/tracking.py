"""MLflow: runs grouped by pipeline execution, verified model logging, registry and aliases.

Registered models carry aliases (`candidate` on every new version, `champion` only through
the evaluation's gates) instead of the deprecated stages. A version is created only after its
artifacts were uploaded and loaded back; if anything fails after that, the version is deleted,
so the registry never holds a version without its model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from torch import nn

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAMES = {"cgan": "crypson-cgan", "vae": "crypson-vae", "classifier": "crypson-classifier"}
EXECUTION_TAG = "crypson.execution"
# A stopped tracking server must fail a stage in seconds: MLflow's defaults (7 retries, backoff
# factor 2, 120 s timeout) wait for minutes. Used unless the environment sets its own values.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "AWS_MAX_ATTEMPTS": "3"}


class TrackingConfigError(ValueError):
    """The tracking settings would send data somewhere nobody chose (e.g. to AWS by default)."""


class TrackingUnavailableError(ConnectionError):
    """The tracking server or the artifact store did not answer after the bounded retries."""


@dataclass(frozen=True)
class TrackingContext:
    """Where and under which pipeline execution a stage logs."""

    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]  # git commit, data version, runner ids: put on every run and version


def configure(tracking_uri: str, experiment: str, artifact_dir: Path | None = None) -> str:
    """Point MLflow at `tracking_uri` and return the experiment id (created when missing).

    Args:
        tracking_uri: e.g. `sqlite:///mlflow.db` (embedded) or `http://host:5000` (a server).
        experiment: experiment name.
        artifact_dir: local artifact folder for a new experiment on an embedded store; a
            server decides its own artifact root, so this is ignored for http(s) URIs.
    """
    mlflow.set_tracking_uri(tracking_uri)
    remote = tracking_uri.startswith(("http://", "https://"))
    if remote:
        bound_http_retries()
        _check_server(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = None
        if artifact_dir is not None and not remote and not tracking_uri.startswith("databricks"):
            location = Path(artifact_dir).resolve().as_uri()
        try:
            found = mlflow.get_experiment(mlflow.create_experiment(experiment, artifact_location=location))
        except mlflow.exceptions.MlflowException:
            # Another process created it since the lookup (pipelines starting together on a new store).
            found = mlflow.get_experiment_by_name(experiment)
            if found is None:
                raise
    check_artifact_store(found.artifact_location, os.environ)
    return found.experiment_id


def bound_http_retries() -> None:
    """Bounded retries and timeouts for MLflow's HTTP client and boto3 (environment wins)."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _check_server(tracking_uri: str) -> None:
    """Fail now, with the URI in the message, if the tracking server does not answer."""
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    try:
        response = http_request(MlflowHostCreds(tracking_uri), "/health", "GET")
        ok = response.status_code == 200
        detail = f"HTTP {response.status_code}"
    except Exception as error:  # requests' and urllib3's connection errors, after the retries
        ok, detail = False, f"{type(error).__name__}: {error}"
    if not ok:
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} is unavailable after "
            f"{os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES']} retries ({detail}); start it "
            "(`crypson stack up`) or unset MLFLOW_TRACKING_URI for the embedded store")


def check_artifact_store(artifact_location: str | None, environ: Mapping[str, str]) -> None:
    """An s3:// artifact root needs an explicit endpoint (MLFLOW_S3_ENDPOINT_URL).

    Without one, boto3 silently sends the artifacts (and the credentials' signatures) to AWS,
    the one place a local or on-premises store is not. For AWS itself, name its endpoint.
    """
    if (artifact_location or "").startswith("s3://") and not environ.get("MLFLOW_S3_ENDPOINT_URL"):
        raise TrackingConfigError(
            f"artifact root {artifact_location} is on S3 but MLFLOW_S3_ENDPOINT_URL is not set: refusing to "
            "upload to AWS by default; set it to your store (`crypson stack env`), or to "
            "https://s3.<region>.amazonaws.com to use AWS deliberately")


def execution_run(experiment_id: str, key: str, name: str, tags: dict[str, str]) -> str:
    """The parent run that groups one pipeline execution's stage runs; created on first use.

    `key` identifies the execution (a KFP run id, or the code+params state for `dvc repro`),
    so stages run as separate processes still land under one parent in the MLflow UI.
    """
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{EXECUTION_TAG}` = '{key}'", max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={**tags, EXECUTION_TAG: key})
    client.set_terminated(run.info.run_id)  # a grouping node only: it has no work of its own
    return run.info.run_id


@contextmanager
def stage_run(context: TrackingContext, stage: str, resume_run_id: str | None = None) -> Iterator[str]:
    """Start (or resume, after an interruption) the MLflow run of one stage; yields its run id."""
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id)
    else:
        run = mlflow.start_run(
            experiment_id=context.experiment_id, run_name=stage, parent_run_id=context.parent_run_id,
            tags={**context.tags, "crypson.stage": stage},
        )
    try:
        with run:
            yield run.info.run_id
    except TrackingUnavailableError:
        raise
    except Exception as error:
        if not _is_connection_error(error):
            raise
        raise TrackingUnavailableError(
            f"stage {stage}: the tracking server ({mlflow.get_tracking_uri()}) or the artifact store stopped "
            f"answering after the bounded retries ({type(error).__name__}: {error}); nothing more was "
            "registered: restart it (`crypson stack up`) and re-run") from error


def log_params(params: dict[str, Any]) -> None:
    """Log params once. A resumed run logs them again: equal values are skipped, and a changed
    value is an error (MLflow cannot change a logged param, and the run would lie about itself)."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params if run else {}
    changed = {k: (existing[k], str(v)) for k, v in params.items() if k in existing and existing[k] != str(v)}
    if changed:
        raise ValueError(f"resumed run {run.info.run_id} was started with other params {changed} (logged, new); "
                         "delete the checkpoint in checkpoints/ to start over")
    fresh = {k: v for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics, step=epoch)


def log_model_verified(
    model: nn.Module, name: str, probe: tuple[torch.Tensor, ...],
    compare: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
) -> str:
    """Log `model`, load it back and check it computes what the original does.

    Args:
        model: the trained module (eval mode is set here).
        name: artifact name within the run.
        probe: example inputs.
        compare: function(model, probe) -> a tensor to compare between original and loaded.
    Returns:
        The logged model's URI, for registration.
    """
    model = model.cpu().eval()
    # MLflow 3 defaults to the torch.export ("pt2") format, which needs a single-tensor example
    # and cannot express the generator's two inputs or the VAE's tuple output: pickle instead.
    pytorch_log = logging.getLogger("mlflow.pytorch")
    level = pytorch_log.level
    pytorch_log.setLevel(logging.ERROR)  # its warning about pickle is the choice made above
    try:
        info = mlflow.pytorch.log_model(model, name=name, serialization_format="pickle",
                                        pip_requirements=pip_requirements())
    except Exception as error:
        if not _is_connection_error(error):
            raise
        raise TrackingUnavailableError(
            f"uploading model {name!r} to the artifact store {mlflow.get_artifact_uri()} failed ({error}); "
            "nothing was registered: start the store (`crypson stack up`) and re-run the stage") from error
    finally:
        pytorch_log.setLevel(level)
    loaded = mlflow.pytorch.load_model(info.model_uri, map_location="cpu").eval()
    with torch.no_grad():
        expected, actual = compare(model, probe), compare(loaded, probe)
    if not torch.allclose(expected, actual, atol=1e-6):
        raise RuntimeError(f"model {name!r} loaded back from MLflow computes different outputs; not registering it")
    return info.model_uri


def _is_connection_error(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a store that could not be reached."""
    import botocore.exceptions
    import requests

    kinds = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
             requests.exceptions.ConnectionError, ConnectionError)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model: it unpickles classes from the crypson package.

    crypson is not published on PyPI: serve with `--env-manager local` in an environment (or
    the project's image) where this version is installed, so nothing is fetched by name.
    """
    from importlib.metadata import version

    return [f"torch=={torch.__version__.split('+')[0]}", f"crypson=={version('crypson')}",
            f"mlflow=={mlflow.__version__}"]


def register_version(model_uri: str, registered_name: str, tags: dict[str, str], description: str,
                     alias: str = CANDIDATE) -> str:
    """Register `model_uri` as a new version with tags and an alias (`candidate` by default).

    Returns:
        The new version number (as a string).
    Raises:
        Whatever MLflow raised; a version created before the failure is deleted first.
    """
    client = MlflowClient()
    _ensure_registered_model(client, registered_name, description)
    version = mlflow.register_model(model_uri, registered_name, tags=tags)
    try:
        client.update_model_version(registered_name, version.version, description=description)
        client.set_registered_model_alias(registered_name, alias, version.version)
    except Exception:
        client.delete_model_version(registered_name, version.version)
        raise
    return str(version.version)


def _ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    """Create the registered model once; another process creating it at the same time is fine."""
    try:
        found = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        found = None
    if found is not None:
        if not found.description:  # created by an older version of this code, or by hand
            client.update_registered_model(name, description=description)
        return
    try:
        client.create_registered_model(name, description=description)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def alias_versions(names: list[str], alias: str = CHAMPION) -> dict[str, str | None]:
    """The version `alias` points at for each registered model (None where unset)."""
    client = MlflowClient()
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = str(client.get_model_version_by_alias(name, alias).version)
        except mlflow.exceptions.MlflowException:
            found[name] = None
    return found


def champion_versions(names: list[str]) -> dict[str, str | None]:
    """Current `champion` version of each registered model (None where unset)."""
    return alias_versions(names, CHAMPION)


def set_champion(versions: dict[str, str]) -> None:
    """Move `champion` to the given version of each registered model, all or none.

    If moving one alias fails, the aliases already moved are put back before the error is raised,
    so `champion` never points at a mixed set.
    """
    client = MlflowClient()
    before = champion_versions(list(versions))
    moved: list[str] = []
    try:
        for name, version in versions.items():
            client.set_registered_model_alias(name, CHAMPION, version)
            moved.append(name)
    except Exception:
        for name in moved:
            if before[name] is None:
                client.delete_registered_model_alias(name, CHAMPION)
            else:
                client.set_registered_model_alias(name, CHAMPION, before[name])
        raise


def disable_telemetry() -> None:
    """MLflow 3 and DVC send usage telemetry unless told not to; nothing leaves this machine."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
