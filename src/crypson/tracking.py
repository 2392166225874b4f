"""MLflow: runs grouped by pipeline execution, verified model logging, registry and aliases.

Networks are logged as weights files + the code that rebuilds them (MLflow "models from code"), never
pickled; each version records its weights' SHA-256, checked whenever the cipher loads it.

Registered models carry aliases (`candidate` on every new version, `champion` only through
the evaluation's gates) instead of the deprecated stages. A version is created only after its
artifacts were uploaded and loaded back; if anything fails after that, the version is deleted,
so the registry never holds a version without its model.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from crypson.files import file_sha256

if TYPE_CHECKING:  # torch loads where a network is logged or loaded, not in every process that tracks
    import torch
    from torch import nn

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAMES = {"cgan": "crypson-cgan", "vae": "crypson-vae", "classifier": "crypson-classifier"}
EXECUTION_TAG = "crypson.execution"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
UI_VIEW = "workflowType=machine_learning"  # the MLflow 3 UI's runs-and-models view (its default is GenAI)
LOCAL_UI = "http://127.0.0.1:5000"  # `mlflow ui`'s default address
HOST_TAG, PID_TAG = "crypson.host", "crypson.pid"  # where a stage run's process runs: stale RUNNING runs are found by it
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
    system_metrics: bool = False  # training runs log the machine's use (MLflow system metrics)


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
    if found.tags.get(EXPERIMENT_KIND_TAG) is None:
        # MLflow 3 opens an experiment without a kind on its GenAI overview (traces, token usage).
        try:
            MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
        except mlflow.exceptions.MlflowException:
            # Stages starting together (the cGAN and VAE tasks) race to set it; a server on PostgreSQL
            # inserts the tag, so the loser gets a unique-key error. The tag being there is what matters.
            if mlflow.get_experiment(found.experiment_id).tags.get(EXPERIMENT_KIND_TAG) is None:
                raise
    return found.experiment_id


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment (or one run) in its model-training view.

    An embedded store (sqlite, a folder) has no server: the link is where `mlflow ui` serves it.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    page = f"{base}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?{UI_VIEW}"


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
    """The parent run of one pipeline execution: RUNNING while its stages run, created on first use.

    `key` identifies the execution (a KFP run id, or the code+params state for `dvc repro`), so stages
    run as separate processes land under one parent in the MLflow UI. A parent that ended (FINISHED,
    FAILED, KILLED) is running again when a stage of the same execution starts (a re-run after a
    failure, or `dvc repro` of the same state); `end_execution` ends it.
    """
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{EXECUTION_TAG}` = '{key}'", max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        run = found[0]
        if run.info.status != "RUNNING" or run.info.run_name != name:
            client.update_run(run.info.run_id, status="RUNNING", name=name)
        return run.info.run_id
    return client.create_run(experiment_id, run_name=name, tags={**tags, EXECUTION_TAG: key}).info.run_id


def end_execution(parent_run_id: str, status: str, metrics: Mapping[str, float] | None = None,
                  tags: Mapping[str, str] | None = None) -> None:
    """End the execution's parent run (FINISHED after promote, FAILED when a stage failed), with the
    headline figures copied onto it so that the runs table shows them without a click."""
    client = MlflowClient()
    finite = {k: float(v) for k, v in (metrics or {}).items() if v is not None and math.isfinite(float(v))}
    if finite or tags:
        client.log_batch(parent_run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in finite.items()],
                         tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    client.set_terminated(parent_run_id, status)


def close_stale_stage_runs(context: TrackingContext, stage: str) -> list[str]:
    """Mark KILLED this execution's earlier runs of `stage` that still say RUNNING although the process
    that ran them, on this host, is gone (a killed `dvc repro`). Runs of other hosts are left alone:
    nothing here can tell whether they still run. Returns the run ids marked."""
    client = MlflowClient()
    stale = client.search_runs(
        [context.experiment_id],
        filter_string=(f"tags.`mlflow.parentRunId` = '{context.parent_run_id}' and tags.`crypson.stage` = '{stage}' "
                       "and attributes.status = 'RUNNING'"))
    marked = []
    for run in stale:
        host, pid = run.data.tags.get(HOST_TAG), run.data.tags.get(PID_TAG, "")
        if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            marked.append(run.info.run_id)
    if marked:
        log.warning("stage %s: marked %d earlier run(s) KILLED whose process is gone: %s", stage, len(marked),
                    ", ".join(marked))
    return marked


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()  # this process is starting the stage again: its old run is not running


@contextmanager
def stage_run(context: TrackingContext, stage: str, resume_run_id: str | None = None) -> Iterator[str]:
    """Start (or resume, after an interruption) the MLflow run of one stage; yields its run id."""
    process = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    system_metrics = context.system_metrics and stage.startswith("train_")
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=system_metrics)
        mlflow.set_tags(process)
    else:
        close_stale_stage_runs(context, stage)
        run = mlflow.start_run(
            experiment_id=context.experiment_id, run_name=stage, parent_run_id=context.parent_run_id,
            tags={**context.tags, "crypson.stage": stage, **process}, log_system_metrics=system_metrics,
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


def log_scored_models(metrics: Mapping[str, float], model_ids: list[str]) -> None:
    """On the active run: log `metrics` against each logged model it scored (MLflow 3 LoggedModel metrics;
    MLflow also records the models as the run's inputs), so the registry can rank versions by them.
    Model ids that are empty (registrations from before model ids were recorded) are skipped."""
    ids = [model_id for model_id in model_ids if model_id]
    if not ids:
        return
    finite = {key: float(value) for key, value in metrics.items()
              if value is not None and math.isfinite(float(value))}
    for model_id in ids:
        mlflow.log_metrics(finite, model_id=model_id)


def log_dataset(prepared: Path, manifest: Mapping[str, Any], context: str) -> None:
    """On the active run: the prepared data's per-image metadata table as an MLflow dataset input
    (`training` or `evaluation`), named by source and split, its digest the data version."""
    import pandas as pd

    table = prepared / "metadata.parquet"
    dataset = mlflow.data.from_pandas(pd.read_parquet(table), source=str(table.resolve()),
                                      name=f"{manifest['source']}-{manifest['split']}",
                                      digest=str(manifest["data_version"])[:16])
    mlflow.log_input(dataset, context=context)


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics, step=epoch)


# The models-from-code file MLflow stores beside each network's weights (no pickle anywhere).
NETWORK_CODE = Path(__file__).with_name("registry_network.py")
WEIGHTS_SHA256_TAG, WEIGHTS_FILE_TAG = "weights_sha256", "weights_file"


class WeightsIntegrityError(ValueError):
    """A registered network's weights file is not the one its version recorded, or needs pickle."""


@dataclass(frozen=True)
class LoggedNetwork:
    """A network logged to MLflow: its model URI and what its version must record."""

    model_uri: str
    sha256: str
    file: str
    model_id: str = ""  # MLflow 3's LoggedModel id: evaluation metrics are logged against it

    @property
    def tags(self) -> dict[str, str]:
        return {WEIGHTS_SHA256_TAG: self.sha256, WEIGHTS_FILE_TAG: self.file}


def log_network(
    model: nn.Module, weights: Path, kind: str, name: str, probe: tuple[torch.Tensor, ...],
    compare: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor], step: int = 0,
) -> LoggedNetwork:
    """Log a network as its weights file + the code that rebuilds it; load it back and check it.

    Nothing is pickled: the artifact is the `crypson.model_files` file (tensors and plain
    hyper-parameters, loaded with `weights_only=True`) and the model's code is `registry_network.py`
    (MLflow "models from code"). The loaded-back copy must compute what `model` does.

    Args:
        model: the trained module (eval mode is set here), saved in `weights`.
        weights: its `crypson.model_files` file.
        kind: generator | vae | classifier (what `model_files.load_model` rebuilds).
        name: artifact name within the run.
        probe: example inputs; compare: function(model, probe) -> a tensor compared between the two.
        step: the training step (epoch) the weights come from: the logged model shows that step's metrics.
    Returns:
        The model URI for registration, with the SHA-256 its version records (`LoggedNetwork.tags`).
    """
    from mlflow.models import infer_signature

    from crypson.registry_network import input_example, network_predict

    import torch

    model = model.cpu().eval()
    sha256, file = file_sha256(weights), Path(weights).name
    example = input_example(kind, model)
    signature = infer_signature(example, network_predict(kind, model, example))  # the version page's schema
    try:
        # step: the epoch whose weights these are, so MLflow links the model to that epoch's metrics.
        info = mlflow.pyfunc.log_model(name=name, python_model=str(NETWORK_CODE), artifacts={"weights": str(weights)},
                                       model_config={"kind": kind}, pip_requirements=pip_requirements(),
                                       signature=signature, input_example=example, step=step)
    except Exception as error:
        if not _is_connection_error(error):
            raise
        raise TrackingUnavailableError(
            f"uploading model {name!r} to the artifact store {mlflow.get_artifact_uri()} failed ({error}); "
            "nothing was registered: start the store (`crypson stack up`) and re-run the stage") from error
    logged = LoggedNetwork(info.model_uri, sha256, file, info.model_id)
    location = mlflow.get_logged_model(info.model_id).artifact_location  # where the upload went
    loaded, _ = _load_verified(location, kind, logged.file, logged.sha256, f"logged model {name!r}", "cpu")
    with torch.no_grad():
        expected, actual = compare(model, probe), compare(loaded, probe)
    if not torch.allclose(expected, actual, atol=1e-6):
        raise RuntimeError(f"model {name!r} loaded back from MLflow computes different outputs; not registering it")
    return logged


def _download_verified(model_uri: str, file: str, sha256: str, what: str) -> Path:
    """Download `file` of a logged model (a models:/name/version URI or its artifact location) and check
    its SHA-256 against the recorded one."""
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/artifacts/{file}"))
    actual = file_sha256(path)
    if actual != sha256:
        raise WeightsIntegrityError(f"{what}: weights file {file} has SHA-256 {actual}, but {sha256} was recorded "
                                    "at registration: the artifact store was changed; refusing to load it")
    return path


def load_weights_only(path: Path, kind: str, what: str,
                      device: torch.device | str = "cpu") -> tuple[nn.Module, tuple[str, ...]]:
    """`model_files.load_model` (weights_only=True), a file that needs pickle refused by name."""
    import pickle

    from crypson import model_files

    try:
        return model_files.load_model(path, kind, device)
    except pickle.UnpicklingError as error:
        raise WeightsIntegrityError(f"{what}: {Path(path).name} is not a weights-only file; refusing to unpickle "
                                    f"it ({str(error).splitlines()[0][:120]})") from None


def _load_verified(model_uri: str, kind: str, file: str, sha256: str, what: str,
                   device: torch.device | str) -> tuple[nn.Module, tuple[str, ...]]:
    return load_weights_only(_download_verified(model_uri, file, sha256, what), kind, what, device)


def registered_weights(name: str, version: str) -> tuple[Path, str]:
    """A registered version's weights file, downloaded and checked against its SHA-256 tag; (path, sha256).

    Raises:
        WeightsIntegrityError: no recorded hash (registered before hashes were) or a different file;
            the message names the model and version.
    """
    tags = MlflowClient().get_model_version(name, version).tags
    sha256, file = tags.get(WEIGHTS_SHA256_TAG), tags.get(WEIGHTS_FILE_TAG)
    if not sha256 or not file:
        raise WeightsIntegrityError(f"{name} v{version} records no weights SHA-256 (registered by an older, "
                                    "pickling version of crypson): re-run the pipeline to register it again")
    return _download_verified(f"models:/{name}/{version}", file, sha256, f"{name} v{version}"), sha256


def load_registered_network(name: str, version: str, kind: str,
                            device: torch.device | str = "cpu") -> tuple[nn.Module, tuple[str, ...]]:
    """A registered version's network, rebuilt from code, weights-only, its SHA-256 checked (`registered_weights`).

    Raises:
        WeightsIntegrityError: see `registered_weights`; or a file that needs pickle.
    """
    path, _ = registered_weights(name, version)
    return load_weights_only(path, kind, f"{name} v{version}", device)


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
    """Pinned requirements of a logged model: its code rebuilds the networks from the crypson package.

    crypson is not published on PyPI: serve with `--env-manager local` in an environment (or
    the project's image) where this version is installed, so nothing is fetched by name.
    """
    from importlib.metadata import version

    import torch

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
        set_alias(client, registered_name, alias, version.version)
    except Exception:
        client.delete_model_version(registered_name, version.version)
        raise
    return str(version.version)


ALIAS_ATTEMPTS = 3


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point `alias` of registered model `name` at `version`.

    MLflow's SQL store moves an alias by a read, then an insert or an update: two processes moving the same
    alias at once (concurrent registrations of one model, tests/integration/test_concurrency.py) can both
    insert, and the second gets a unique-key error. Moving it again then updates the row: the last one wins,
    as it would have without the race.
    """
    for attempt in range(ALIAS_ATTEMPTS):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except mlflow.exceptions.MlflowException:
            if attempt == ALIAS_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


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


def describe_version(name: str, version: str, description: str) -> None:
    """Set a registered version's description (markdown: the model card the registry page shows)."""
    MlflowClient().update_model_version(name, version, description=description)


def tag_versions(versions: dict[str, str], tags: dict[str, str]) -> None:
    """Set `tags` on each registered version (e.g. the promotion gates' verdict)."""
    client = MlflowClient()
    for name, version in versions.items():
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)


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
            set_alias(client, name, CHAMPION, version)
            moved.append(name)
    except Exception:
        for name in moved:
            if before[name] is None:
                client.delete_registered_model_alias(name, CHAMPION)
            else:
                client.set_registered_model_alias(name, CHAMPION, before[name])
        raise
