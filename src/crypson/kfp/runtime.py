"""What a Kubeflow component runs in its container: artifacts in, one stage, artifacts out.

The stages read and write a working-directory layout (crypson.stages.Layout), the one `dvc repro`
uses. A component therefore copies its input artifacts into a Layout under a temporary folder,
runs the stage exactly as the CLI does (same config validation, same MLflow context and tags),
and copies the stage's outputs to its output artifact paths. Its settings are only the params keys
its stage reads, cut from the pipeline's `params` by the first task (split_params), and completed
with the code's defaults. No kfp import here: the component passes paths and plain values, so this
module is tested without a KFP runtime.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from crypson.config import Config, deep_merge, parse_config
from crypson.files import atomic_write_bytes
from crypson.layout import REGISTRATION_FILE, Layout
from crypson.stages.runner import DATA_STAGES, STAGES, configure_logging
from crypson.stages.runner import run_stage as run_stage_in

# Artifact name (as the components use it) -> where the stages keep that output in a Layout.
ARTIFACTS: dict[str, Callable[[Layout], Path]] = {
    "raw": lambda layout: layout.raw,
    "prepared": lambda layout: layout.prepared,
    "validation": lambda layout: layout.validation_report,
    # One page (a KFP HTML artifact is a single file): GX's Data Docs page of the metadata table's validation.
    "data_docs": lambda layout: max((layout.data_docs / "validations" / "metadata").rglob("*.html"), default=
                                    layout.data_docs / "validations" / "metadata" / "missing.html"),
    "cgan": lambda layout: layout.model_dir("cgan"),
    "vae": lambda layout: layout.model_dir("vae"),
    "classifier": lambda layout: layout.model_dir("classifier"),
    "confusion_real": lambda layout: layout.plot("confusion_real.csv"),
    "confusion_generated": lambda layout: layout.plot("confusion_generated.csv"),
    "attack_report": lambda layout: layout.root / "reports" / "attacks.md",
    "security_report": lambda layout: layout.root / "reports",  # security_quality.md with its figures/
    "security_page": lambda layout: layout.root / "reports" / "security_quality.html",  # one page, figures inlined
    "promotion": lambda layout: layout.promotion_report,
}

# The JSON a stage leaves as its result (what the component logs to KFP and passes on).
RESULTS: dict[str, Callable[[Layout], Path]] = {
    "validate": lambda layout: layout.validation_report,
    "train_cgan": lambda layout: layout.metrics("train_cgan"),
    "train_vae": lambda layout: layout.metrics("train_vae"),
    "train_classifier": lambda layout: layout.metrics("train_classifier"),
    "evaluate": lambda layout: layout.metrics("evaluate"),
    "attack": lambda layout: layout.metrics("attacks"),
    "promote": lambda layout: layout.promotion_report,
}


class MetricsArtifact(Protocol):
    """The part of kfp's Metrics artifact this module uses."""

    path: str

    def log_metric(self, metric: str, value: float) -> None: ...


def load_params(params: str) -> Config:
    """A task's params text (its sections of params.yaml, or the whole) -> a validated Config.

    What the text leaves out takes the code's defaults (crypson.config, equal to params.yaml's values);
    a stage reads only the keys its text holds (tests/unit/test_dvc_yaml.py checks the lists).
    """
    raw = yaml.safe_load(params)
    return parse_config(raw if raw is not None else {}, source="pipeline argument `params`")


# The tasks that read params, in the order of the split_params component's outputs (components/stages.py).
PARAMS_TASKS = ("ingest", "prepare", "validate", "train_cgan", "train_vae", "train_classifier", "evaluate", "attack",
                "gate", "promote")


def select_params(config: Config, keys: Sequence[str]) -> dict[str, Any]:
    """The settings that `keys` name, nested as in params.yaml, with their resolved values.

    Args:
        config: the validated settings.
        keys: params keys as dvc.yaml lists them: a top-level key or section (`seed`, `vae`) or a dotted
            key inside a section (`data.split`).
    Returns:
        A params mapping holding only those keys; parse_config of it gives the code's defaults elsewhere.
    """
    resolved = config.model_dump(by_alias=True, mode="json")
    selected: dict[str, Any] = {}
    for key in keys:
        *sections, name = key.split(".")
        source, target = resolved, selected
        for section in sections:
            source = source.get(section) if isinstance(source, dict) else None
            target = target.setdefault(section, {})
        if not isinstance(source, dict) or name not in source:
            raise ValueError(f"params key {key!r} names no setting; top-level keys: {', '.join(resolved)}")
        target[name] = source[name]
    return selected


# The pipeline's typed run parameters, the knobs a user changes in the KFP UI's run form, and the params key
# each one sets. "" or 0 (their defaults) keep the value of `params` (and of the `preset`).
RUN_PARAMETERS = {"data_source": "data.source", "data_split": "data.split", "cgan_epochs": "cgan.epochs",
                  "vae_epochs": "vae.epochs", "classifier_epochs": "classifier.epochs",
                  "cipher_scheme": "cipher.scheme"}


def overlay_run_parameters(params: str, presets: Mapping[str, Mapping[str, Any]], preset: str = "",
                           values: Mapping[str, Any] | None = None) -> str:
    """`params` with the named preset merged on top, then each typed run parameter that is set.

    Args:
        params: the pipeline's `params` argument (params.yaml as JSON or YAML text).
        presets: name -> partial params, the repository's presets/*.yaml compiled into the spec.
        preset: a name of `presets`, or "" for none.
        values: run parameter (RUN_PARAMETERS) -> value; "" and 0 leave the setting as it is.
    Returns:
        The params text every task's settings are cut from (split_params validates it whole).
    Raises:
        ValueError: an unknown preset or run parameter, a negative epoch count (each named).
    """
    raw = yaml.safe_load(params) or {}
    if preset:
        if preset not in presets:
            raise ValueError(f"preset {preset!r} is not one of the presets in the spec: {', '.join(sorted(presets))}")
        raw = deep_merge(raw, dict(presets[preset]))
    for name, value in (values or {}).items():
        if name not in RUN_PARAMETERS:
            raise ValueError(f"unknown run parameter {name!r}; known: {', '.join(RUN_PARAMETERS)}")
        if value in ("", 0, None):
            continue
        if isinstance(value, int) and value < 0:
            raise ValueError(f"run parameter {name} = {value}: an epoch count is positive (0 keeps params' value)")
        section, key = RUN_PARAMETERS[name].split(".")
        raw = deep_merge(raw, {section: {key: value}})
    return json.dumps(raw, separators=(",", ":"))


def split_params(params: str, keys: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The pipeline's `params` cut into what each task reads: one JSON text per task of PARAMS_TASKS.

    The whole is validated first, so a bad key anywhere fails here, before any stage runs. A task's
    text holds the resolved value of each of its keys (a default the user left out is spelled out), as
    sorted JSON: it changes, and with it the task's KFP cache key, only when a value the task reads does.

    Args:
        params: the pipeline argument (params.yaml as JSON or YAML text).
        keys: task -> the params keys it reads (crypson.kfp.project.task_params: dvc.yaml's lists).
    """
    if set(keys) != set(PARAMS_TASKS):
        raise ValueError(f"params keys are given for tasks {sorted(keys)}; expected exactly {list(PARAMS_TASKS)}")
    config = load_params(params)
    return tuple(json.dumps(select_params(config, keys[task]), sort_keys=True, separators=(",", ":"))
                 for task in PARAMS_TASKS)


def check_tracking(config: Config, environment: Mapping[str, str]) -> None:
    """Refuse an embedded MLflow store given by a relative path.

    A component runs in a temporary folder that is deleted afterwards: a relative SQLite path or
    artifact folder would put runs and model files where no one finds them again. A server
    (MLFLOW_TRACKING_URI from the cluster's secret) decides its own artifact store.
    """
    uri = environment.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri
    if uri.startswith(("http://", "https://", "databricks")):
        return
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        raise ValueError(f"tracking.tracking_uri {uri!r} is relative; a pipeline task needs an absolute "
                         "sqlite:////path or a server URI (MLFLOW_TRACKING_URI)")
    if not Path(config.tracking.artifact_dir).is_absolute():
        raise ValueError(f"tracking.artifact_dir {config.tracking.artifact_dir!r} is relative; a pipeline task "
                         "needs an absolute folder for an embedded store")


def copy_path(source: Path, destination: Path) -> None:
    """Copy a file or a whole folder (artifacts are either), creating parents."""
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise FileNotFoundError(f"expected stage output or input artifact at {source}, found nothing")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)
    else:
        shutil.copy2(source, destination)


def run_environment(run_id: str, git_commit: str) -> dict[str, str]:
    """What the CLI reads to tag MLflow runs (the set ones): KFP_RUN_ID becomes the `kfp_run_id` tag and
    CRYPSON_EXECUTION_ID groups the stages of one KFP run under one MLflow parent run; CRYPSON_GIT_COMMIT
    replaces `git rev-parse` (no .git in an image)."""
    wanted = {"KFP_RUN_ID": run_id, "CRYPSON_EXECUTION_ID": run_id, "CRYPSON_GIT_COMMIT": git_commit}
    return {key: value for key, value in wanted.items() if value}


@contextmanager
def task_environment(run_id: str, git_commit: str) -> Iterator[None]:
    """Set run_environment's variables for the duration of one stage (in this process)."""
    wanted = run_environment(run_id, git_commit)
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


TRAINING_STAGES = ("train_cgan", "train_vae", "train_classifier")  # the stages that keep checkpoints
# The training tasks' checkpoint folder on a cluster: a fixed volume (pipelines/crypson_pipeline.py mounts the
# PVC there and sets this variable), kept across runs so that KFP can cache the tasks (see task_checkpoints).
CHECKPOINTS_ENV = "CRYPSON_CHECKPOINTS"
RUN_ID_ENV = "KFP_RUN_ID"  # the KFP run id, set from the pod's `pipeline/runid` label (the Downward API)


def task_checkpoints(root: str, stage: str, params: str, inputs: Mapping[str, str]) -> Path:
    """Where one training task keeps its checkpoint: `root/<stage>-<key>`, key = SHA-256 of what the task is
    (its stage, its params text and every byte of its input artifacts).

    `root` is a volume that outlives pods and runs (a fixed PVC on a cluster, a folder under kfp.local's
    pipeline root). Not the run's workspace: KFP puts the names of the PVCs a task mounts into its cache
    key, and a workspace's PVC is named after its run (kubeflow/pipelines backend/src/v2/driver/container.go,
    GetWorkspacePVCName), so a task that mounts it can never be a cache hit in a later run. Keyed by content,
    a retried attempt (a reclaimed node, an evicted pod) finds its own checkpoint and resumes at the next
    epoch in the same MLflow run; a later run of the same task after a failed one resumes it too, as
    `dvc repro` does after an interruption; two runs with other settings never share a file. A finished
    stage deletes its checkpoint and `run_stage` its empty folder, so only interrupted work stays there.
    """
    if not Path(root).is_absolute():
        raise ValueError(f"checkpoint folder {root!r} is not an absolute path")
    digest = hashlib.sha256(f"{stage}\0{params}\0".encode())
    for name in sorted(inputs):
        top = Path(inputs[name])
        files = sorted(path for path in top.rglob("*") if path.is_file()) if top.is_dir() else [top]
        for path in files:
            digest.update(f"{name}/{path.relative_to(top) if top.is_dir() else ''}\0".encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return Path(root) / f"{stage}-{digest.hexdigest()[:16]}"


def run_stage(stage: str, params: str, inputs: Mapping[str, str], outputs: Mapping[str, str], *,
              run_id: str = "", git_commit: str = "", results: Mapping[str, dict] | None = None,
              checkpoints: str = "") -> dict:
    """Run one stage on artifacts.

    Args:
        stage: a crypson stage (STAGES).
        params: the params the stage reads (its split_params text), as JSON or YAML.
        inputs: artifact name (ARTIFACTS) -> local path of the input artifact.
        outputs: artifact name (ARTIFACTS) -> local path the output artifact is written to.
        run_id: the KFP run id, for MLflow tags and grouping; "": KFP_RUN_ID from the environment (the
            pipeline sets it from the pod's label, so the run id is no input of a task that KFP may cache).
        git_commit: the code's commit, recorded on MLflow runs (empty: ask git).
        results: earlier stages' result JSON by metrics name (`evaluate`, `attacks`), for attack and promote.
        checkpoints: the folder of the training tasks' checkpoints (`task_checkpoints` picks this task's
            subfolder); "": CRYPSON_CHECKPOINTS from the environment; neither: the task's temporary
            folder, lost with the pod.
    Returns:
        The stage's result JSON (RESULTS), or {} for a stage without one.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
    unknown = sorted(set(inputs) - set(ARTIFACTS) | set(outputs) - set(ARTIFACTS))
    if unknown:
        raise ValueError(f"unknown artifact names {unknown}; allowed: {', '.join(ARTIFACTS)}")
    config = load_params(params)
    if stage not in DATA_STAGES:
        check_tracking(config, os.environ)
    configure_logging()
    with tempfile.TemporaryDirectory(prefix=f"crypson-{stage}-") as work:
        layout = Layout(Path(work))
        for name, path in inputs.items():
            copy_path(Path(path), ARTIFACTS[name](layout))
        for name, values in (results or {}).items():
            layout.metrics(name).parent.mkdir(parents=True, exist_ok=True)
            layout.metrics(name).write_text(json.dumps(values))
        checkpoints = checkpoints or os.environ.get(CHECKPOINTS_ENV, "")
        if checkpoints and stage in TRAINING_STAGES:
            kept = task_checkpoints(checkpoints, stage, params, inputs)
        else:
            kept = None
        with task_environment(run_id or os.environ.get(RUN_ID_ENV, ""), git_commit):
            run_stage_in(stage, config, layout.root, params.encode(), progress=False, track_data=False,
                         checkpoints=kept)
        if kept is not None:  # finished: its checkpoint file is gone; the folder goes too if nothing else is in it
            with contextlib.suppress(OSError):
                kept.rmdir()
        for name, path in outputs.items():
            copy_path(ARTIFACTS[name](layout), Path(path))
        result = RESULTS.get(stage)
        return json.loads(result(layout).read_text()) if result else {}


def gates_pass(params: str, evaluation: Mapping[str, Any], attacks: Mapping[str, Any]) -> bool:
    """Whether every promotion gate passes (crypson.stages.promotion.check_gates), printing each.

    The pipeline runs promotion only when this is true (the `dsl.If`); the promote stage checks
    the same gates again before it moves `champion`, so the two can never disagree silently.
    """
    from crypson.stages.promotion import check_gates

    gates = check_gates(load_params(params), {**evaluation, **attacks})
    for gate in gates:
        print(f"gate {gate['metric']}: value {gate['value']:.4g}, {gate['kind']} {gate['threshold']:.4g}: "
              f"{'pass' if gate['passed'] else 'FAIL'}")
    return all(gate["passed"] for gate in gates)


def numeric_metrics(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested results to dotted names; keep finite numbers only (KFP metrics are floats)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(numeric_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def log_metrics(artifact: MetricsArtifact, results: Mapping[str, Any]) -> dict[str, float]:
    """Log a stage's numeric results on a KFP Metrics artifact (drawn in the run's UI), and write them to
    the artifact's file as JSON.

    KFP keeps a Metrics artifact's values in its metadata and writes no file; the file makes the artifact
    a real object in the pipeline root (readable without the KFP UI), and it is what lets kfp.local's cache
    reuse the task: kfp.local treats a cache entry whose artifact has no file as broken (a cache miss).

    Returns:
        What was logged: the component's output for the gate and promotion. A value that could
        not be measured (null, NaN) is left out; the gates treat a missing value as failing.
    """
    values = numeric_metrics(results)
    for name, value in values.items():
        artifact.log_metric(name, value)
    atomic_write_bytes(Path(artifact.path), json.dumps(values, indent=1, sort_keys=True).encode())
    return values


def confusion_matrix(predictions_csv: str, prepared: str) -> tuple[list[str], list[list[int]]]:
    """(categories, counts[actual][predicted]) from the evaluate stage's per-image CSV.

    Categories are all classes of the prepared data in label order, so a class that never
    occurs still has its row and column (what kfp's ClassificationMetrics expects).
    """
    classes = json.loads((Path(prepared) / "classes.json").read_text())
    index = {name: position for position, name in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    with open(predictions_csv, newline="") as stream:
        for row in csv.DictReader(stream):
            try:
                counts[index[row["actual"]]][index[row["predicted"]]] += 1
            except KeyError as error:
                raise ValueError(f"{predictions_csv}: class {error.args[0]!r} is not one of the prepared "
                                 f"data's classes {''.join(classes)!r}") from None
    return classes, counts


def registration(model: str) -> dict[str, str]:
    """The MLflow registration a training stage recorded in its model folder (name, version, run)."""
    return json.loads((Path(model) / REGISTRATION_FILE).read_text())


RAW_DATA = "data/raw"  # the DVC-tracked output of the ingest stage (dvc.yaml)
URL_REMOTE = "crypson-pipeline"  # the name given to a remote passed by URL


def fetch_versioned_raw(destination: Path, repo_url: str, rev: str, remote: str = "", remote_url: str = "",
                        environment: Mapping[str, str] | None = None) -> None:
    """Copy `data/raw` exactly as DVC versioned it at `rev` of `repo_url`, from the DVC remote.

    Args:
        destination: folder that becomes the raw data (replaced whole, atomically).
        repo_url: git URL (or local path) of the project repository.
        rev: git revision whose dvc.lock names the data; required, so a run is reproducible.
        remote: DVC remote name in that repository's config ("" = its default remote).
        remote_url: a remote URL that overrides the configured one (e.g. s3://bucket/dvc). For an
            s3:// URL the endpoint comes from MLFLOW_S3_ENDPOINT_URL (the cluster's S3 store).
        environment: where the S3 endpoint and credentials are read from (default os.environ;
            boto3 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY itself).
    """
    from dvc.api import DVCFileSystem

    from crypson.files import atomic_directory

    if not rev:
        raise ValueError(f"data_rev is required with data_repo_url {repo_url!r}: a commit or tag, "
                         "so the run trains on a known data version")
    environment = os.environ if environment is None else environment
    remote_config: dict[str, str] = {}
    if remote_url:
        remote_config["url"] = remote_url
        if remote_url.startswith("s3://") and environment.get("MLFLOW_S3_ENDPOINT_URL"):
            remote_config["endpointurl"] = environment["MLFLOW_S3_ENDPOINT_URL"]
    name = remote or (URL_REMOTE if remote_url else None)
    fs = DVCFileSystem(repo_url, rev=rev, remote=name, remote_config=remote_config or None)
    if not fs.isdir(RAW_DATA):
        raise FileNotFoundError(f"{repo_url} at {rev} has no DVC-tracked {RAW_DATA} (run `dvc repro ingest` "
                                "and `dvc push` there first)")
    with atomic_directory(Path(destination)) as staging:
        for path in fs.find(RAW_DATA):
            target = staging / Path(path).relative_to(RAW_DATA)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))


def ingest(params: str, raw: str, repo_url: str = "", rev: str = "", remote: str = "",
           remote_url: str = "") -> str:
    """The ingest component: versioned data from DVC when a repository is given, else the stage.

    Without `repo_url` (a local run) the ingest stage writes the raw files per params, as
    `crypson stage ingest` does. With it, the files are those of the repository's dvc.lock at
    `rev`, and they must be a complete `data.split` in EMNIST format (checked, never assumed).
    Returns:
        Where the data came from, for the run's logs and the artifact's metadata.
    """
    config = load_params(params)
    if not repo_url:
        run_stage("ingest", params, {}, {"raw": raw})
        return f"ingest stage, data.source={config.data.source}"
    from crypson.data.emnist import load_emnist

    with tempfile.TemporaryDirectory(prefix="crypson-ingest-") as work:
        staging = Path(work) / "raw"
        fetch_versioned_raw(staging, repo_url, rev, remote, remote_url)
        load_emnist(staging, config.data.split)  # fails loudly on a missing file or another split
        copy_path(staging, Path(raw))
    return f"dvc: {repo_url}@{rev}:{RAW_DATA}"
