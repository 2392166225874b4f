"""Run one pipeline stage with its MLflow context: the one entry that `crypson stage ...` (and so
`dvc repro`) and the Kubeflow components (crypson.kfp.runtime) share.

It takes a validated Config and raises the stages' own errors (stage_errors()); each caller turns them
into what its world expects (an exit code and a line on stderr, a failed KFP task).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from crypson import provenance
from crypson.config import Config, ConfigError
from crypson.stages import STAGE_MODULES, Layout, stage_function
from crypson.telemetry import disable_telemetry

if TYPE_CHECKING:
    from crypson.tracking import TrackingContext

log = logging.getLogger(__name__)
STAGES = tuple(STAGE_MODULES)
DATA_STAGES = ("ingest", "prepare", "validate")  # data in, data out; Kubeflow caches them across runs
UNTRACKED_STAGES = ("ingest", "prepare")  # no MLflow run; validate logs one when asked (`track_data`)


def stage_errors() -> tuple[type[Exception], ...]:
    """The errors a stage stops on with a one-line reason (bad settings, missing inputs, failed
    validation, an unreachable tracking server); anything else is a bug and keeps its traceback."""
    from crypson.stages.data import DataValidationError
    from crypson.tracking import TrackingUnavailableError

    return (ConfigError, FileNotFoundError, DataValidationError, ValueError, TrackingUnavailableError)


def configure_logging() -> None:
    """Stage progress on stderr at INFO; the libraries' chatter at WARNING; no MLflow telemetry."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "great_expectations", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    disable_telemetry()


def execution_name(commit: str, data_source: str, split: str, params: bytes, kfp_run_id: str = "") -> str:
    """What the runs table shows for an execution: the code, the data, the settings (or the KFP run).

    A KFP task receives only the params sections its stage reads, so no task could name the whole
    settings: a KFP execution is named by its run, whose arguments the KFP UI shows.
    """
    code = commit[:8] + ("-dirty" if commit.endswith("-dirty") else "")
    if kfp_run_id:
        return f"{code} {data_source}/{split} kfp {kfp_run_id[:8]}"
    return f"{code} {data_source}/{split} params {hashlib.sha256(params).hexdigest()[:8]}"


def source_tags(commit: str, kfp_run_id: str = "") -> dict[str, str]:
    """MLflow's own source tags, which fill the UI's Source and Version columns."""
    tags = {"mlflow.source.type": "JOB" if kfp_run_id else "LOCAL",
            "mlflow.source.name": "kubeflow: crypson" if kfp_run_id else "dvc repro (crypson stage)"}
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def tracking_store(config: Config, root: Path, environ: Mapping[str, str]) -> tuple[str, Path]:
    """The tracking URI and the artifact folder (for a new experiment on an embedded store) of a stage.

    MLFLOW_TRACKING_URI wins over params. A relative embedded store (`sqlite:///mlflow.db`) and a
    relative artifact folder belong to the DVC project, not to the stage's working folder: DVC sets
    DVC_ROOT to the project's root for every stage, also for `dvc exp run --temp` and queued experiments,
    whose stages run in a temporary copy that is deleted afterwards (their runs and registry versions went
    with it). Without DVC_ROOT (`crypson stage` by hand) they are under `root`.
    """
    base = Path(environ.get("DVC_ROOT") or root).resolve()
    uri = environ.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = f"sqlite:///{base / uri.removeprefix('sqlite:///')}"
    return uri, base / config.tracking.artifact_dir  # an absolute artifact_dir stays itself


def tracking_context(config: Config, params: bytes, root: Path) -> TrackingContext:
    """The MLflow experiment, the execution's parent run and the provenance tags every stage run carries."""
    from crypson import tracking
    from crypson.data.prepare import load_manifest

    uri, artifact_dir = tracking_store(config, root, os.environ)
    experiment_id = tracking.configure(uri, config.tracking.experiment, artifact_dir)
    manifest = load_manifest(root / "data" / "prepared")
    commit, kfp_run_id = provenance.git_commit(), os.environ.get("KFP_RUN_ID", "")
    tags = {"git_commit": commit, "data_version": manifest["data_version"],
            "dvc_data_md5": provenance.dvc_data_md5(root), "data_source": manifest["source"],
            **source_tags(commit, kfp_run_id), **provenance.image_tags()}
    if kfp_run_id:
        tags["kfp_run_id"] = kfp_run_id
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    name = execution_name(commit, manifest["source"], manifest["split"], params, kfp_run_id)
    if tags.get("dvc_experiment"):
        name += f" exp {tags['dvc_experiment']}"
    parent = tracking.execution_run(experiment_id, provenance.execution_key(params), name, tags)
    return tracking.TrackingContext(experiment_id, parent, tags, config.tracking.system_metrics)


def run_stage(stage: str, config: Config, root: Path, params: bytes, *, progress: bool = True,
              track_data: bool = True, checkpoints: Path | None = None) -> None:
    """Run `stage` on the Layout under `root`.

    Args:
        stage: one of STAGES.
        config: the validated settings.
        root: the folder the stage's inputs and outputs live under (crypson.stages.Layout).
        params: the params file's bytes, part of the execution key that groups stage runs.
        progress: progress bars for the training stages.
        track_data: the validate stage gets its own MLflow run in the execution; False keeps it a pure
            data step (Kubeflow: no run id, so that KFP's cache reuses it across runs).
        checkpoints: where a training stage keeps (and looks for) its checkpoint; None: `root/checkpoints`.
    Raises:
        ValueError: an unknown stage name (and, like every error in stage_errors(), a stage's own
            expected failures).
    """
    function = stage_function(stage)
    layout = Layout(root, checkpoints)
    if stage in UNTRACKED_STAGES or (stage in DATA_STAGES and not track_data):
        function(config, layout)
    elif stage.startswith("train_"):
        from crypson.train import distributed

        # Under torchrun only rank 0 tracks: other ranks would race it to create the store and runs.
        context = tracking_context(config, params, root) if distributed.is_main_process() else None
        with _failing_execution(context):
            function(config, layout, context, progress=progress)
    else:
        context = tracking_context(config, params, root)
        with _failing_execution(context):
            function(config, layout, context)


@contextmanager
def _failing_execution(context: TrackingContext | None) -> Iterator[None]:
    """A stage that fails ends its execution's parent run FAILED (the next stage run reopens it)."""
    try:
        yield
    except BaseException as stopped:
        if context is not None:
            from crypson import tracking

            try:
                tracking.end_execution(context.parent_run_id,
                                       "KILLED" if isinstance(stopped, KeyboardInterrupt) else "FAILED")
            except Exception as error:  # the stage's own error is the one to report
                log.warning("could not mark the execution's MLflow run FAILED: %s", error)
        raise
