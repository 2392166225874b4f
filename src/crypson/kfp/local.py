"""Run the Kubeflow pipeline on this machine with kfp.local: same spec, same components, no cluster.

kfp 2.17's local runner executes the whole DAG, `dsl.If`, the training tasks' retries (after a second,
not minutes) and KFP's caching (keyed by each task's component, image, command and arguments, under
the pipeline root's `.kfp_cache`) included; it ignores what only a cluster can honour (the
kfp-kubernetes node selector, toleration, Secret, PVC, Downward API environment and time limits, the
accelerator and resource requests) and warns about the requests. So the local run is the committed
pipeline minus its placement: MLflow settings come from this process's environment or from
params.yaml instead of the Secret, the KFP run id (KFP_RUN_ID) from this process, the training
checkpoints go to the pipeline root's `checkpoints/` instead of the PVC, and every task runs as a
subprocess of the current Python environment. Each task's params lists come from the repository's
dvc.yaml, as at compile time. A second run in the same pipeline root reuses what did not change.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from pathlib import Path

from crypson.config import Config
from crypson.kfp.runtime import RUN_ID_ENV
from crypson.kfp.project import DVC_FILE, load_pipeline_module, load_presets, resolve_image, task_params


LOCAL_RETRY_BACKOFF_S = 1
CHECKPOINTS = "checkpoints"  # the training tasks' checkpoint folder under the pipeline root (a PVC on a cluster)


def local_tracking_overrides(config: Config, base: Path) -> dict:
    """params overrides that make an embedded MLflow store's paths absolute (relative to `base`).

    Each task runs the stage in a temporary folder (crypson.kfp.runtime), so a relative SQLite
    path or artifact folder would land there and be deleted with it.
    """
    tracking = config.tracking
    uri = tracking.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = "sqlite:///" + str((base / uri.removeprefix("sqlite:///")).resolve())
    return {"tracking": {"tracking_uri": uri, "artifact_dir": str((base / tracking.artifact_dir).resolve())}}


def run_local(repo: Path, params: str, pipeline_root: Path, arguments: dict[str, str], cache: bool = True) -> dict:
    """Run the pipeline with kfp.local's subprocess runner in this Python environment.

    Args:
        repo: repository root (holds pipelines/ and components/).
        params: the `params` argument (params.yaml text with absolute tracking paths).
        pipeline_root: where kfp.local writes every task's artifacts.
        arguments: the pipeline's other arguments (git_commit, data_repo_url, ...).
        cache: reuse the outputs of tasks whose inputs an earlier run in `pipeline_root` had (KFP's
            caching, as on a cluster); False runs every task.
    Returns:
        The pipeline's outputs (none today: the results are MLflow runs and artifacts).
    Raises:
        RuntimeError: naming the task that failed.
    """
    from kfp import local

    module = load_pipeline_module(repo)
    root = Path(pipeline_root).resolve()
    # A failed training task retries after seconds here, not the minutes a cluster waits for a node.
    pipeline = module.build_pipeline(params, task_params(Path(repo) / DVC_FILE), resolve_image(None, module),
                                     retry_backoff_s=LOCAL_RETRY_BACKOFF_S, presets=load_presets(repo),
                                     checkpoints=str(root / CHECKPOINTS))
    # What a cluster's pods read from their `pipeline/runid` label: one id for this run's tasks (they
    # inherit this process's environment).
    os.environ[RUN_ID_ENV] = str(uuid.uuid4())
    # Tasks start `python3` from PATH: make it this environment's, where crypson is installed.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # use_venv=False on purpose: the tasks run in this environment, not in the image's.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache)
    task = pipeline(params=params, **arguments)
    return dict(task.outputs)
