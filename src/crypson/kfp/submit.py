"""Submit the compiled pipeline to a Kubeflow Pipelines server: a new pipeline version, then a run.

Every submission uploads the spec as a new, named version (commit + time), so the KFP UI keeps
which spec each run used; the run then references that version, not an inline copy.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DESCRIPTION = "Crypson: trains, evaluates, attacks and promotes the cGAN, VAE and latent classifier."


@dataclass(frozen=True)
class Submission:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str


def version_name(pipeline_name: str, git_commit: str, now: datetime.datetime | None = None) -> str:
    """A unique, readable version name: the pipeline, the short commit, the UTC time to the second."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    commit = re.sub(r"[^0-9a-zA-Z-]", "", git_commit)[:12] or "nocommit"
    return f"{pipeline_name}-{commit}-{now.strftime('%Y%m%d-%H%M%S')}"


def submit(client: Any, package: Path, *, pipeline_name: str, version: str, experiment: str, run_name: str,
           arguments: dict[str, str], namespace: str | None = None) -> Submission:
    """Upload `package` as version `version` of `pipeline_name` (creating the pipeline once) and run it.

    Args:
        client: a kfp.Client.
        package: the compiled spec (pipelines/crypson_pipeline.yaml).
        pipeline_name: the pipeline's name on the server.
        version: the new version's name (unique per pipeline).
        experiment: KFP experiment to run in (created when missing).
        run_name: the run's display name.
        arguments: the pipeline's arguments (params, git_commit, data_repo_url, ...).
        namespace: the user's namespace on a multi-user deployment; None on a single-user one.
    """
    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"no compiled pipeline at {package.resolve()}: run `crypson pipeline compile`")
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name, description=DESCRIPTION,
                                             namespace=namespace).pipeline_id
    uploaded = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                                              description=DESCRIPTION)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.run_pipeline(experiment_id=experiment_id, job_name=run_name, pipeline_id=pipeline_id,
                              version_id=uploaded.pipeline_version_id, params=arguments)
    return Submission(pipeline_id, uploaded.pipeline_version_id, experiment_id, run.run_id)
